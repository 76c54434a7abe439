"""The hosted clean room service.

* :mod:`.app` - the FastAPI application and its route table;
* :mod:`.auth` - RFC 9421 request signing and verification (also used by clients);
* :mod:`.blobs` - content-addressed ciphertext storage;
* :mod:`.server` - ``cleanroom serve``: settings, wiring, uvicorn.

Nothing is imported here, so a client can use :mod:`.auth` without loading
the web server.
"""
