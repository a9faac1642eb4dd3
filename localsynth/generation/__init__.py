"""Generation stage: prompts, the request plan, cleaning and filters, one shard's run, its run directory."""
