from tests.cri.conftest import own_vmrtd, vmrtd  # noqa: F401 - fixtures
