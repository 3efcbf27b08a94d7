"""Jobs: the training job (triggers, one run per pipeline, retries) and the schedule
(APScheduler: cron retraining and the periodic jobs of the other parts)."""

from appliance.jobs.scheduler import JobScheduler
from appliance.jobs.training import Trainer

__all__ = [
    "JobScheduler",
    "Trainer",
]
