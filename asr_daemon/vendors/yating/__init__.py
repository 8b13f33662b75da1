"""Yating (Taiwan AI Labs) streaming ASR: Taiwanese Mandarin, Mandarin+English, English, Japanese.

A stream is two steps: ``token.py`` buys a one-time token over HTTP, then the codec speaks the WebSocket
(``wss://asr.api.yating.tw/ws/v1/?token=...``).
"""
