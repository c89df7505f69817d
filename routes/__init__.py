"""The relay's HTTP and websocket routes: the phone networks' (``calls``) and the operator's (``operator``)."""
