"""Device settings checked against the machine, before any model is loaded."""

from __future__ import annotations

from localsynth.errors import UserError


def resolve_device(device: str, torch, given: str, fix: str) -> str:
    """'auto' -> cuda when there is one, else cpu; a GPU this machine does not have is a user
    error that shows the setting as `given` and says `fix`
    (e.g. "generator.hf.device is 'cuda'", "set generator.hf.device=cpu")."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            raise UserError(
                f"{given} but this machine has {count} visible CUDA GPU(s); {fix} (or auto)"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{given} but MPS is not available; {fix}")
    return device
