"""Command-line tools run with ``python -m tools.<name>``: the ablation runner (ablate), the embedding-part
table (parts), ONNX / TorchScript export (export), the SMPL file converter (convert_smpl) and the installed
``sas-*`` console commands (console). What every command line shares is :mod:`utils.cli`."""
