"""Where the model can run: what torch sees of CUDA here (the only torch import outside the segmenter)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CudaStatus:
    import_error: str | None  #: why torch cannot be imported here, or None
    torch_version: str = ""
    cuda_version: str | None = None  #: the CUDA version torch was built for (None for a CPU build)
    device: str | None = None  #: e.g. "cuda:0 NVIDIA H200" when a GPU is visible, else None


def cuda_status() -> CudaStatus:
    """What torch sees of CUDA in this process (imports torch)."""
    try:
        import torch
    except ImportError as e:
        return CudaStatus(import_error=str(e))
    device = None
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        device = f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return CudaStatus(None, torch.__version__, torch.version.cuda, device)
