"""Host plug-ins (Krita, GIMP) and their installer. Host glue only; logic lives in protocol."""
