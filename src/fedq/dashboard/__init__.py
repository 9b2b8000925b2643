"""``fedq dashboard``: a live web page of federations, participants, queues and the DLQ."""
