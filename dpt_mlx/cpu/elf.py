"""Reading and writing libmlx's PLT/GOT slots: ELF dynamic-section parsing and the dynamic loader's
queries (``dladdr``, ``dl_iterate_phdr``), for dpt_mlx.cpu.blas.

``libmlx.so`` calls ``cblas_sgemm`` & co. through PLT slots that the loader binds when
``mlx.core`` is imported; these helpers find those slots, say what they point at, and write them.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import struct

# ELF relocation types that hold the address of a called function.
_SLOT_RELOCS = {
    62: (7, 6),  # EM_X86_64: R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT
    183: (1026, 1025),  # EM_AARCH64: R_AARCH64_JUMP_SLOT, R_AARCH64_GLOB_DAT
}



def elf_gemm_slots(path: str, names) -> tuple[dict, str | None]:
    """Offsets (relative to the load base) of the GOT slots of ``names`` in ``path``.

    Parses the dynamic segment the way the loader does: DT_JMPREL (PLT relocations)
    and DT_RELA (for -fno-plt builds that call through GLOB_DAT slots).
    """
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse_slots(data, frozenset(names))
    finally:
        data.close()


@functools.lru_cache(maxsize=8)
def _slots_cached(path: str, names: tuple, mtime: float):
    return elf_gemm_slots(path, names)


def slots(path, names):
    return _slots_cached(path, tuple(names), os.path.getmtime(path))


def _parse_slots(data, wanted):
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}, "not a little-endian ELF64 file"
    (e_machine,) = struct.unpack_from("<H", data, 18)
    if e_machine not in _SLOT_RELOCS:
        return {}, f"unsupported ELF machine {e_machine}"
    (e_phoff,) = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    loads, dynamic = [], None
    for i in range(e_phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from(
            "<IIQQQQQQ", data, e_phoff + i * e_phentsize
        )
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return {}, "no PT_DYNAMIC segment"

    def to_offset(vaddr):
        for va, off, size in loads:
            if va <= vaddr < va + size:
                return vaddr - va + off
        raise ValueError(f"address {vaddr:#x} is not in a PT_LOAD segment")

    dyn = {}
    off, size = dynamic
    for i in range(0, size, 16):
        tag, val = struct.unpack_from("<qQ", data, off + i)
        if tag == 0:
            break
        dyn.setdefault(tag, val)
    if 6 not in dyn or 5 not in dyn:
        return {}, "no dynamic symbol table"
    symtab, strtab, syment = to_offset(dyn[6]), to_offset(dyn[5]), dyn.get(11, 24)
    jump_slot, glob_dat = _SLOT_RELOCS[e_machine]
    slots: dict = {}
    tables = []
    if 23 in dyn and 2 in dyn:  # DT_JMPREL, DT_PLTRELSZ (RELA on both arches)
        tables.append((to_offset(dyn[23]), dyn[2]))
    if 7 in dyn and 8 in dyn:  # DT_RELA, DT_RELASZ
        tables.append((to_offset(dyn[7]), dyn[8]))
    for table, table_size in tables:
        for i in range(0, table_size, 24):
            r_offset, r_info, _ = struct.unpack_from("<QQq", data, table + i)
            if (r_info & 0xFFFFFFFF) not in (jump_slot, glob_dat):
                continue
            (st_name,) = struct.unpack_from("<I", data, symtab + (r_info >> 32) * syment)
            end = data.find(b"\0", strtab + st_name)
            name = data[strtab + st_name : end].decode("ascii", "replace")
            if name in wanted:
                slots.setdefault(name, []).append(r_offset)
    return slots, None


# ---------------------------------------------------------------- dynamic loader


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


class _DlPhdrInfo(ctypes.Structure):
    _fields_ = [
        ("dlpi_addr", ctypes.c_size_t),
        ("dlpi_name", ctypes.c_char_p),
        ("dlpi_phdr", ctypes.c_void_p),
        ("dlpi_phnum", ctypes.c_uint16),
    ]


_libc = None


def _c():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        if not hasattr(libc, "dladdr"):  # glibc < 2.34 keeps it in libdl
            libc = ctypes.CDLL("libdl.so.2", use_errno=True)
            libc.dl_iterate_phdr = ctypes.CDLL(None).dl_iterate_phdr
            libc.mprotect = ctypes.CDLL(None, use_errno=True).mprotect
        libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = libc
    return _libc


def dladdr(addr):
    """(library path, symbol name) that ``addr`` belongs to, or (None, None)."""
    info = _DlInfo()
    if not addr or not _c().dladdr(ctypes.c_void_p(addr), ctypes.byref(info)):
        return None, None
    fname = info.dli_fname.decode(errors="replace") if info.dli_fname else None
    sname = info.dli_sname.decode(errors="replace") if info.dli_sname else None
    if fname:
        fname = os.path.realpath(fname)
    return fname, sname


def loaded_objects():
    """[(load base, path)] of every object loaded in the process."""
    out = []
    callback_type = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(_DlPhdrInfo), ctypes.c_size_t, ctypes.c_void_p
    )

    def callback(info, size, data):
        name = info.contents.dlpi_name
        if name:
            out.append((info.contents.dlpi_addr, name.decode(errors="replace")))
        return 0

    _c().dl_iterate_phdr(callback_type(callback), None)
    return out


def find_libmlx():
    """(load base, real path) of the libmlx.so loaded in this process, or None."""
    for base, name in loaded_objects():
        if os.path.basename(name).startswith("libmlx.so"):
            return base, os.path.realpath(name)
    return None


def symbol_address(handle, name):
    try:
        return ctypes.cast(getattr(handle, name), ctypes.c_void_p).value
    except AttributeError:
        return None


def _page_is_writable(addr):
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                span, perms = line.split()[:2]
                lo, hi = (int(x, 16) for x in span.split("-"))
                if lo <= addr < hi:
                    return "w" in perms, perms
    except OSError:
        pass
    return False, None


def write_pointer(addr, value):
    writable, _ = _page_is_writable(addr)
    if writable:
        ctypes.c_void_p.from_address(addr).value = value
        return
    # Full RELRO (or a -fno-plt GLOB_DAT slot): unprotect the page for the write.
    page = os.sysconf("SC_PAGE_SIZE")
    start = addr & ~(page - 1)
    prot_rw, prot_r = 0x1 | 0x2, 0x1
    if _c().mprotect(ctypes.c_void_p(start), page, prot_rw) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    try:
        ctypes.c_void_p.from_address(addr).value = value
    finally:
        _c().mprotect(ctypes.c_void_p(start), page, prot_r)


def read_pointer(addr):
    return ctypes.c_void_p.from_address(addr).value


