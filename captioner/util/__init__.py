"""What every stage leans on: atomic durable writes, file locks, where caches and run folders
live, which device and number format a run uses, where a process stands in a distributed
launch (launch.py), and guards around the torch internals the package leans on (torch_api.py).
Imports only captioner.config and captioner.errors."""
