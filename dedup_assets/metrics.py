"""What every materialisation reports: progress while it runs, then counts, throughput,
downloads per image, peak memory and the models used as metadata."""

import resource
import time

from dagster import AssetExecutionContext


def reset_peak_rss() -> None:
    """Restart this process's peak-RSS counter (Linux; ignored elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last reset, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def children_peak_rss_mb() -> float:
    """Largest peak resident memory of any finished worker process, in MiB."""
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


class Progress:
    """Logs ``done/total, images/s, ETA`` at most every ``every_s`` seconds."""

    def __init__(self, context: AssetExecutionContext, label: str, total: int, every_s: float = 15.0):
        self.context, self.label, self.total, self.every_s = context, label, total, every_s
        self.start = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < self.every_s and done != self.total:
            return
        self.last = now
        rate = done / (now - self.start) if now > self.start else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        self.context.log.info(
            f"{self.label}: {done}/{self.total} images, {rate:.1f} images/s, ETA {eta:.0f} s"
        )


class Timer:
    """Start of a materialisation: resets the peak-RSS counter; ``done`` adds the metadata."""

    def __init__(self, context: AssetExecutionContext):
        self.context = context
        reset_peak_rss()
        self.start = time.perf_counter()

    def done(
        self, images: int, *, images_read: int, collection_images: int, models: str, **extra
    ) -> float:
        """Adds the metadata; returns the seconds since the start."""
        seconds = time.perf_counter() - self.start
        self.context.add_output_metadata(
            {
                "images": images,
                "seconds": round(seconds, 3),
                "images_per_second": round(images / seconds, 2) if seconds > 0 else None,
                "images_read": images_read,
                "downloads_per_image": round(images_read / collection_images, 4)
                if collection_images
                else 0.0,
                "peak_rss_mb": peak_rss_mb(),
                "workers_peak_rss_mb": children_peak_rss_mb(),
                "models": models,
                **extra,
            },
            output_name="result",
        )
        return seconds
