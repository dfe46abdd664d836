"""Before a download starts and after one fails: is the source reachable at all (one short
probe per host, no retries), and which partial files did the failed download leave.

tfds' downloader retries a connection 10 times with back-off and shows progress bars while
it does: offline, that is minutes before it gives up. One TCP connection per host, all at
once and bounded by :data:`PROBE_TIMEOUT`, says the same in seconds."""
import glob
import os
import os.path as osp
import shutil
import socket
import threading
import time
import urllib.parse
import urllib.request

from .common import one_line

PROBE_TIMEOUT = 5.0  # seconds for all the probes together
DEFAULT_PORTS = dict(http=80, https=443)
# What tfds leaves while it writes: ``<name>.tmp.<uuid>`` beside a downloaded file (a folder,
# kept when the download fails) and ``incomplete.<uuid>_<name>`` beside an extracted one.
PARTIAL_PATTERNS = ('*.tmp.*', 'incomplete.*')


def address_of(url):
    """The (host, port) a download of ``url`` connects to: the proxy's where the environment
    sets one for the url's scheme (as requests, which tfds uses, does), else the url's."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ''):
        parts = urllib.parse.urlsplit(proxy if '://' in proxy else f'http://{proxy}')
    return parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme, 80)


def connect(host, port, timeout):
    """Opens and closes one TCP connection (name resolution included); raises OSError."""
    with socket.create_connection((host, port), timeout=timeout):
        pass


def unreachable(urls, timeout=PROBE_TIMEOUT):
    """``{(host, port): reason}`` for the addresses of ``urls`` that no connection reached
    within ``timeout`` seconds. The probes run at once, one per address, without retries;
    threads are daemons, so a name lookup that hangs does not hold the process."""
    addresses = sorted({address_of(url) for url in urls})
    reasons = {}

    def probe(address):
        try:
            connect(*address, timeout)
            reasons[address] = None
        except OSError as err:
            reasons[address] = one_line(err)

    threads = [threading.Thread(target=probe, args=(address, ), daemon=True)
               for address in addresses]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    found = dict(reasons)  # a late probe must not change what is reported
    return {address: found.get(address, f'no answer within {timeout:g} s')
            for address in addresses if found.get(address, '') is not None}


def describe_address(address):
    host, port = address
    return host if port in DEFAULT_PORTS.values() else f'{host}:{port}'


def partial_files(*folders):
    """The partial downloads and extractions in ``folders`` (not below: an extracted
    archive can hold a hundred thousand files), as a set."""
    return {path for folder in folders for pattern in PARTIAL_PATTERNS
            for path in glob.glob(osp.join(glob.escape(folder), pattern))}


def remove_partials(before, *folders):
    """Removes the partial files under ``folders`` that were not in ``before`` (what this
    process left: another one may be downloading into the same folder)."""
    for path in sorted(partial_files(*folders) - before):
        if osp.isdir(path) and not osp.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except OSError:
                pass
