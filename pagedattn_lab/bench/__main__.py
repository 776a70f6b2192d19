"""`python -m pagedattn_lab.bench --help`: benchmark the kernels on the GPU (see run.py)."""
import sys

from .run import main

sys.exit(main())
