from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("chat", "0003_message_client_id_index")]

    operations = [
        migrations.AlterField(
            model_name="message",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "Pending"),
                    ("complete", "Complete"),
                    ("stopped", "Stopped"),
                    ("failed", "Failed"),
                    ("degraded", "Degraded"),
                    ("interrupted", "Interrupted"),
                ],
                default="complete",
                max_length=12,
            ),
        ),
    ]
