"""The data key a database belongs to: its check value, the start-up check, and rotation.

Exceptions (every one a clear sentence for the operator, printed as one line)::

    DataKeyError
    ├── DataKeyMismatch      the key is not the one the database's data is under
    ├── RotationUnderway     a rotation was started and not finished
    └── RotationRefused      a rotation cannot run now (service up, wrong new key …)
"""
