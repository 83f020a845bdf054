"""The link between the service and its HSM, as both ends speak it: the wire format
(``protocol``) and the mutual-TLS credentials and contexts (``credentials``).

Neutral ground: it imports neither ``cardsvc`` (the client end) nor ``hsm_stub`` (the server
end), so either side can change its internals without reaching into the other's.
"""
