"""Running Cunxiang: the `cunxiang` command, the one-command demo, and production configuration."""
