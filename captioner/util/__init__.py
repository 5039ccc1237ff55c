"""What every stage leans on: atomic durable writes, file locks, where caches and run folders
live, and which device and number format a run uses. Imports only captioner.config and
captioner.errors."""
