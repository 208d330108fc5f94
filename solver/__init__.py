from solver.optimizer import build_optimizer, parameter_groups
from solver.scheduler import build_scheduler, lr_factor

__all__ = ["build_optimizer", "parameter_groups", "build_scheduler", "lr_factor"]
