"""Everything that listens: one HTTP/1.1 intermediary engine (h11 on both sides)
and the policies that sit on it: ``sign`` (the proxy) and ``verify`` (the gate).

A policy is a pure function of a request head (and the clock): it returns
"forward with these headers" or "answer this", and never touches a socket.
"""
