"""Kiosk texts: Indonesian by default, English on request (?lang=en)."""

from __future__ import annotations

LANGS = ("id", "en")
DEFAULT_LANG = "id"

TEXTS: dict[str, dict[str, str]] = {
    "id": {
        "title": "Pilih minuman & camilan",
        "subtitle": "Sentuh produk untuk menambahkannya ke keranjang",
        "sold_out": "Habis",
        "left": "tersisa",
        "cart": "Keranjang",
        "cart_empty": "Keranjang masih kosong",
        "total": "Total",
        "checkout": "Bayar",
        "empty_cart": "Kosongkan",
        "scan": "Pindai QRIS untuk membayar",
        "scan_hint": "Buka aplikasi e-wallet atau m-banking Anda, lalu pindai kode ini",
        "time_left": "Sisa waktu",
        "cancel": "Batal",
        "order": "Pesanan",
        "paid": "Pembayaran diterima",
        "dispensing": "Sedang mengeluarkan produk…",
        "of": "dari",
        "success": "Silakan ambil produk Anda",
        "thanks": "Terima kasih!",
        "refunded": "Maaf, sebagian produk gagal keluar",
        "refund_note": "Dana akan dikembalikan ke akun pembayaran Anda",
        "refund_amount": "Dikembalikan",
        "expired": "Waktu pembayaran habis",
        "cancelled": "Pesanan dibatalkan",
        "back": "Kembali ke menu",
        "out_of_service": "Mesin sedang tidak beroperasi",
        "out_of_service_note": "Mohon maaf, silakan coba beberapa saat lagi",
        "error": "Terjadi kesalahan, silakan coba lagi",
        "waiting": "Menunggu pembayaran…",
        "lang_other": "English",
    },
    "en": {
        "title": "Pick a drink or a snack",
        "subtitle": "Tap a product to add it to your cart",
        "sold_out": "Sold out",
        "left": "left",
        "cart": "Cart",
        "cart_empty": "Your cart is empty",
        "total": "Total",
        "checkout": "Pay",
        "empty_cart": "Clear",
        "scan": "Scan the QRIS code to pay",
        "scan_hint": "Open your e-wallet or banking app and scan this code",
        "time_left": "Time left",
        "cancel": "Cancel",
        "order": "Order",
        "paid": "Payment received",
        "dispensing": "Dispensing your items…",
        "of": "of",
        "success": "Please take your items",
        "thanks": "Thank you!",
        "refunded": "Sorry, some items could not be dispensed",
        "refund_note": "The money goes back to the account you paid with",
        "refund_amount": "Refunded",
        "expired": "Payment time is over",
        "cancelled": "Order cancelled",
        "back": "Back to the menu",
        "out_of_service": "This machine is out of service",
        "out_of_service_note": "Sorry, please try again a little later",
        "error": "Something went wrong, please try again",
        "waiting": "Waiting for payment…",
        "lang_other": "Bahasa Indonesia",
    },
}


def pick(lang: str | None) -> str:
    return lang if lang in LANGS else DEFAULT_LANG
