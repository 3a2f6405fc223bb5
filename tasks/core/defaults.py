"""Defaults that more than one part of the toolkit uses, in one place."""

LABEL_STUDIO_VERSION = "1.23.2"
LABEL_STUDIO_SDK_VERSION = "2.1.2"   # what label-studio 1.23.2 pins
LABEL_STUDIO_PORT = 8080
HTTP_PORT = 80
FIRST_START_TIMEOUT = 600            # migrations on a small VM take minutes: poll, never sleep blindly
SWAP_HEALTH_TIMEOUT = 300            # after a data swap, before rolling back
MIN_PASSWORD_LENGTH = 8
APT_TIMEOUT = 1800                   # apt-get update + install on a slow mirror
PIP_TIMEOUT = 3600                   # pip install label-studio (about 160 packages)
ACME_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"   # Let's Encrypt production
CERT_WARN_DAYS = 14                  # status warns when the served certificate expires sooner

# What Label Studio keeps in its data dir (and a snapshot holds under the same names)
DATABASE = "label_studio.sqlite3"
SECRET_ENV = ".env"
MEDIA = "media"
