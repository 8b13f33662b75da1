"""iApp Technology real-time ASR (Thai), the iFlyTek engine behind ``wss://api-iflytek.iapp.co.th/asr``."""
