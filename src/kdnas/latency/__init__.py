"""Latency: the timing protocol (:mod:`.timing`), its cache shared by trials (:mod:`.cache`) and the node-wide lock
that keeps training off the cores while a student is timed (:mod:`.isolation`)."""
