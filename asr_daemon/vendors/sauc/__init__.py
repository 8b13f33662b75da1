"""360 Zyun (智汇云) and ByteDance Volcengine large-model streaming ASR ("SAUC" binary protocol).

Both services speak the same framing (a 4-byte header, optional sequence number, size, gzip payload); they
differ only in the endpoint and in how the client authenticates, which is all ``adapter.py`` varies.
"""
