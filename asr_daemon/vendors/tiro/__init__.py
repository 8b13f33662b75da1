"""Tiro / Talgreinir (Icelandic): JSON over WebSocket through a grpc-gateway proxy."""
