"""How to install the optional extras (a leaf module: settings, the checks and the sources all cite it).

The advice depends on where the daemon runs: the container image and the Home Assistant add-on say so in
``ASR_DAEMON_INSTALL`` (``container``, ``addon``); a checkout or the installed service has it unset.
"""

import os

INSTALL_KIND = os.environ.get("ASR_DAEMON_INSTALL", "")

if INSTALL_KIND == "container":
    # The image has the offline engine unless it was built without it; it has no PortAudio.
    LOCAL_INSTALL_HINT = (
        "the image was built without it: build it again with the default EXTRAS (--build-arg EXTRAS=local)"
    )
    MIC_INSTALL_HINT = (
        "the container image has no microphone support: run asr-daemon from a checkout on the machine the "
        "microphone is attached to (sudo scripts/install --with-mic)"
    )
elif INSTALL_KIND == "addon":
    LOCAL_INSTALL_HINT = "the add-on includes it: reinstall the add-on (Settings > Add-ons > asr-daemon > Rebuild)"
    MIC_INSTALL_HINT = (
        "the add-on has no microphone support: use a Wyoming satellite, or run asr-daemon from a checkout on the "
        "machine the microphone is attached to"
    )
else:
    # The package is on no index: these are what install an extra from a checkout.
    LOCAL_INSTALL_HINT = (
        "sudo scripts/install --with-local (the installed service), or scripts/setup (a checkout's .venv)"
    )
    MIC_INSTALL_HINT = (
        "sudo scripts/install --with-mic (the installed service), or .venv/bin/pip install -e '.[mic]' (a checkout)"
    )


def key_file_hint(vendor: str) -> str:
    """Where a key file for ``vendor`` goes where the daemon runs."""
    if INSTALL_KIND == "container":
        return f"for the container, a file {vendor}_api_key in the mounted /run/secrets (a docker or podman secret)"
    if INSTALL_KIND == "addon":
        return f"for the add-on, the api_key of {vendor} on its Configuration tab"
    return (
        f"for the installed service, the file /etc/asr-daemon/credentials/{vendor}_api_key followed by "
        "sudo scripts/install"
    )
