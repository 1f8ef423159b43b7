"""The browser uploader (`clearance-upload.js`) and the demo page the gateway serves."""
