"""The gateway's MQTT client: a sans-I/O packet codec and the Twisted code around it."""
