"""Training losses of SAS-VPReID: cross-entropy and the memory loss (``loss.softmax``), the batch-hard
triplet (``loss.triplet``), the shape prior (``loss.shape``) and the config-driven sum of them
(``loss.build``). Import each from its module."""
