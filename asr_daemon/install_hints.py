"""How to install the optional extras (a leaf module: settings, the checks and the sources all cite it)."""

# The package is on no index: these are what install an extra from a checkout.
LOCAL_INSTALL_HINT = "sudo scripts/install --with-local (the installed service), or scripts/setup (a checkout's .venv)"
MIC_INSTALL_HINT = (
    "sudo scripts/install --with-mic (the installed service), or .venv/bin/pip install -e '.[mic]' (a checkout)"
)
