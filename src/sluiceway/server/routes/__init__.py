"""One module per client protocol, each an ``APIRouter``."""
