"""Jobs: the training job (triggers, one run per pipeline, retries), the schedule
(APScheduler: cron retraining and the periodic jobs of the other parts), and housekeeping
(retention of data, models and records; deleting a pipeline)."""

from appliance.jobs.housekeeping import Housekeeping
from appliance.jobs.scheduler import JobScheduler
from appliance.jobs.training import Trainer

__all__ = [
    "Housekeeping",
    "JobScheduler",
    "Trainer",
]
