"""Loaded only by the fake CIFAR-10 test (through PYTHONPATH): fake batch files cannot
match the MD5 sums of the published CIFAR-10 files, so the check is turned off."""

import torchvision.datasets.cifar as cifar

cifar.check_integrity = lambda *args, **kwargs: True
