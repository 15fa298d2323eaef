"""How a job runs, apart from what it computes: the device and batch sizes (``hardware``,
``gpus``), the job folder's lock (``joblock``), progress bars (``progress``), what ran where
(``provenance``), and recording results.json and W&B (``record``, ``wandb_sync``)."""
