"""AmiVoice Cloud Platform (Advanced Media, Japan): WebSocket ``s``/``p``/``e`` commands, S/E/C/U/A events."""
