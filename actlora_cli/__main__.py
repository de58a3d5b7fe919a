"""``python -m actlora_cli`` (and so ``torchrun ... -m actlora_cli train``)."""

from .cli import main

main()
