"""qsift beside amavisd-new on the same machine, messages and scanners: `python -m bench.amavisd.compare`."""
