"""Who may publish: mosquitto password files, mosquitto ACL files."""
