"""The participant trains: it waits for the newest global model and sends back its delta."""
