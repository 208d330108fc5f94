"""SAS-VPReID model parts, one module each: the CLIP tower (``model.backbone``) and its weight files
(``model.weights``), the multi-proxy memory, MGTM, PRSD with SMPL, the assembled ``model.sas.SASModel``
and its builder ``model.build.build_model``. Importing the package imports none of them, so
``import model.memory`` stays light and does not pull in open_clip or smplx."""
