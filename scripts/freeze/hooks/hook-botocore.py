# Replaces pyinstaller-hooks-contrib's hook for botocore. The installer uses only
# botocore's SigV4 signer and credential chain (installer/store.py signs S3 GETs itself),
# never a service client: its 28 MB of service models (botocore/data) stay out of the
# frozen installer.
datas: list[tuple[str, str]] = []
hiddenimports: list[str] = []
