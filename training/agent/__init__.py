"""The on-device agent: `python agent.pyz train <round dir>` (see training/agent/runner.py).

Stdlib + torch + numpy + safetensors + training/fl only — no Django, no scikit-learn — because this is
what runs on phones. The platform builds it into one zipapp with training/agent/build.py.
"""

AGENT_VERSION = "1.0.0"  # bump when the config.json / result.json contract changes
CONFIG_FORMAT = 1
