"""Training system: data, LightningModule, CLI, export. Importing this package is cheap:
heavy modules (Lightning, wandb) are imported only by the submodules that need them."""
