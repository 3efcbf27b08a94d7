"""Jobs: the training job (triggers, one run per pipeline, retries), the schedule
(APScheduler: cron retraining and the periodic jobs of the other parts), housekeeping
(retention of data, models and records; deleting a pipeline), and the batches held out
of training for suspect labels until an operator releases or discards them."""

from appliance.jobs.bundle_source import BundleSource
from appliance.jobs.housekeeping import Housekeeping
from appliance.jobs.scheduler import JobScheduler
from appliance.jobs.suspect import SuspectBatches
from appliance.jobs.training import Trainer

__all__ = [
    "BundleSource",
    "Housekeeping",
    "JobScheduler",
    "SuspectBatches",
    "Trainer",
]
