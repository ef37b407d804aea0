"""Source text for child processes that report their own peak RSS (VmHWM, which a child
spawned by subprocess does not inherit from its parent, unlike ru_maxrss)."""

VMHWM_FUNCTION = '''
def vmhwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0
'''
