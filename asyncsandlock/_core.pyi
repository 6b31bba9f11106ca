# Types of the cffi-generated extension built from csrc/ (see _ffi_build.py).
from typing import Any

ffi: Any
lib: Any
