"""Optimizer with its parameter groups (``solver.optimizer``) and the learning-rate schedule
(``solver.scheduler``). Import each from its module."""
