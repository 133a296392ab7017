"""Network architectures: weightless ``nn.Module`` builders looked up by a manifest's name.

The lowest layer: imports torch and torchvision only."""
