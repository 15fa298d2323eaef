"""What a job reads and builds before training: the reviews (``corpus``, ``sources`` for local
folders and what their labels mean), the models (``models``: the embedded tiny GPT-NeoX or a hub /
local one; ``scorer``: the sentiment reward), the prompts and DPO's preference pairs (``prompts``,
``prefs``), and where the shared ones are kept (``cache``, ``snapshots``)."""
