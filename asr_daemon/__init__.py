"""asr-daemon: a Wyoming speech-to-text server streaming live to cloud ASR vendors."""

__version__ = "0.1.0"
