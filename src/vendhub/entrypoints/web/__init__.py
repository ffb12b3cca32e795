"""Server-rendered pages: the kiosk screen and the operator console."""
