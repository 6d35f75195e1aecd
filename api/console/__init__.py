"""The operators' web console, served by the controller at `/`: server-rendered pages (Jinja2),
htmx and a small script of our own, with every library vendored under `static/vendor` (no CDN at
run time). Labels in Chinese and English come from `labels.toml`."""
